-- puabo-nexus-fleet-manager: who a fleet belongs to. Its vehicles, positions and geofences live in its
-- FleetActor (nexus_ray/actors/fleet.py), durable in Redis.

CREATE TABLE fleets (
    id         text PRIMARY KEY,
    name       text        NOT NULL,
    -- The account that operates the fleet (a logistics company's): it alone, and administrators, reach it.
    owner      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fleets_owner ON fleets (owner, id);
