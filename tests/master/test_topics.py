"""The publish topics the master gives minions (master/publish.py Topics)."""

from hypothesis import given
from hypothesis import strategies as st

from safcm.master.publish import TOPIC_BYTES, Topics
from tests.common.strategies import fuzz, minion_ids


def test_topics_are_numbers_in_the_order_minions_first_subscribe():
    topics = Topics()
    assert topics.of("web1") is None
    assert topics.give("web1") == b"\x00\x00\x00\x01"
    assert topics.give("db1") == b"\x00\x00\x00\x02"
    # A minion that subscribes again (a reconnection) keeps its topic.
    assert topics.give("web1") == b"\x00\x00\x00\x01"
    assert topics.of("web1") == b"\x00\x00\x00\x01"
    assert topics.of("web2") is None


@given(st.lists(minion_ids, min_size=1, max_size=50))
@fuzz(0.5)
def test_each_minion_has_a_topic_of_its_own_and_none_prefixes_another(ids):
    topics = Topics()
    given_ = {i: topics.give(i) for i in ids}
    assert {len(t) for t in given_.values()} == {TOPIC_BYTES}
    assert len(set(given_.values())) == len(given_)  # ZeroMQ matches prefixes
    assert all(topics.of(i) == t for i, t in given_.items())


def test_the_topics_of_a_fleet_make_a_small_subscription_trie():
    """libzmq walks every node of its subscription trie for each publish
    connection that ends; the topics of 10,000 minions share their leading
    bytes, so the trie has about one node a minion (16 random bytes a minion
    made about 15)."""
    topics = Topics()
    fleet = [topics.give(f"web{n}") for n in range(10_000)]
    nodes = {t[:k] for t in fleet for k in range(1, TOPIC_BYTES + 1)}
    assert len(nodes) < 1.1 * len(fleet)
