-- Whom a delivery is for: the order's customer for one made from shipping's shipment.created, the caller for one
-- made through the API. Every delivery.status event names them, so the notification service can tell them how
-- their parcel moves (it notifies the event's `customer`). Deliveries made before this column have none.
ALTER TABLE deliveries ADD COLUMN customer text;
