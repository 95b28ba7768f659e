"""bench-under-attack, briefly: while the red-team corpora run, another user's question is answered right and
fast, the app process stays small, and nothing leaks."""

from pipelines.sql.attack_bench import RSS_LIMIT_MB, run


def test_another_user_is_answered_while_one_attacks():
    report = run(seconds=4)
    assert report["attacker"]["queries"] > 10 and report["attacker"]["leaked"] == 0
    assert report["other_user"]["questions"] >= 5 and report["other_user"]["wrong_or_failed"] == 0
    assert report["other_user"]["max_s"] <= 2.0 and report["app_rss_mb"]["peak"] <= RSS_LIMIT_MB
    assert report["passed"]
