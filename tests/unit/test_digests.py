"""Keyed digests carry the id of the key that made them and keep verifying through a master-key rotation."""

from pydantic import SecretStr

from nexus_ray.config import get_settings
from nexus_ray.edge import digests

OLD = "an old master key that is long enough 0123456789"
NEW = "the new master key that is long enough 9876543210"


def use_keys(monkeypatch, current: str, *previous: str) -> None:
    s = get_settings()
    monkeypatch.setattr(s, "master_key", SecretStr(current))
    monkeypatch.setattr(s, "previous_master_keys", [SecretStr(p) for p in previous])


def test_a_digest_names_its_key_and_depends_on_purpose_and_key(monkeypatch):
    use_keys(monkeypatch, OLD)
    d = digests.digest("api-key", "secret value")
    assert len(d) == digests.DIGEST_BYTES and d[: digests.KEY_ID_BYTES] == digests.key_id(OLD.encode())
    assert OLD.encode() not in d and b"secret value" not in d
    assert d != digests.digest("legacy-session", "secret value")  # purposes never collide
    assert digests.matches(d, "api-key", "secret value")
    assert not digests.matches(d, "api-key", "another value")
    assert not digests.matches(d, "legacy-session", "secret value")
    use_keys(monkeypatch, NEW)
    assert digests.digest("api-key", "secret value") != d


def test_digests_of_a_previous_key_verify_during_the_overlap_only(monkeypatch):
    use_keys(monkeypatch, OLD)
    old = digests.digest("oauth-refresh", "nxr_token")
    use_keys(monkeypatch, NEW, OLD)  # rotated: new digests under NEW, OLD's still verify
    new = digests.digest("oauth-refresh", "nxr_token")
    assert new != old and new[:4] == digests.key_id(NEW.encode())
    assert digests.matches(old, "oauth-refresh", "nxr_token") and digests.matches(new, "oauth-refresh", "nxr_token")
    assert digests.candidates("oauth-refresh", "nxr_token") == [new, old]  # lookups by digest find either
    assert digests.hex_candidates("oauth-refresh", "nxr_token") == [new.hex(), old.hex()]
    use_keys(monkeypatch, NEW)  # the overlap ends
    assert not digests.matches(old, "oauth-refresh", "nxr_token")
    assert digests.candidates("oauth-refresh", "nxr_token") == [new]


def test_a_digest_without_a_known_key_id_never_matches(monkeypatch):
    use_keys(monkeypatch, NEW, OLD)
    forged = b"\0\0\0\0" + digests.digest("api-key", "v")[4:]
    assert not digests.matches(forged, "api-key", "v")
    assert not digests.matches(b"", "api-key", "v")
