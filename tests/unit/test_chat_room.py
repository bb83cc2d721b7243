"""The chat room entity's pure parts: the moderation filter and the ops a replay (or a Ray retry) applies again."""

from __future__ import annotations

from nexus_ray.actors.chat_room import ChatRoom, moderation_refusal

POLICY = {"blocked_words": ["Spam", "scam"], "block_links": True}


def test_blocked_words_are_whole_words_in_any_case():
    assert moderation_refusal("cheap SPAM here", POLICY) == "blocked word: spam"
    assert moderation_refusal("a scam and spam", POLICY) == "blocked word: scam"
    assert moderation_refusal("spammer is not the word", POLICY) is None


def test_links_are_refused_only_where_the_policy_says():
    for text in ("see https://example.com", "go to www.example.org", "visit example.com today"):
        assert moderation_refusal(text, POLICY) == "links are not allowed in this room", text
        assert moderation_refusal(text, {"blocked_words": [], "block_links": False}) is None, text
    assert moderation_refusal("the end. Next sentence", POLICY) is None


def test_ops_are_idempotent_and_sequences_never_go_back():
    room = ChatRoom("r1")
    state = room.apply(room.initial_state(), "create", {"by": "alice", "name": "Lobby", "policy": POLICY})
    again = room.apply(state, "create", {"by": "alice", "name": "Renamed", "policy": {}})
    assert again == state and state["members"] == {"alice": "moderator"}
    state = room.apply(state, "member", {"user_id": "bob", "role": "member"})
    assert room.apply(state, "member", {"user_id": "bob", "role": "member"}) == state
    state = room.apply(state, "seq", {"seq": 5})
    assert room.apply(state, "seq", {"seq": 4})["seq"] == 5  # a retried older op does not rewind it
    state = room.apply(state, "read", {"user_id": "bob", "seq": 3})
    assert room.apply(state, "read", {"user_id": "bob", "seq": 2})["reads"] == {"bob": 3}
    state = room.apply(state, "mute", {"user_id": "bob", "until": 100.0})
    assert room.apply(state, "mute", {"user_id": "bob", "until": None})["muted"] == {}
    assert room.apply(state, "member", {"user_id": "bob", "role": None})["members"] == {"alice": "moderator"}
