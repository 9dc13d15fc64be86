"""Start-up settings as plain values: what each variable means, and the combinations that would be
accepted but silently do nothing (or something else than documented), which are refused instead."""

from __future__ import annotations

import pytest

from spot_drain_worker.config import ConfigError, load_config

JOBS = "jobs-token-0123456789abcdef"
CONTROL = "control-token-0123456789abc"


@pytest.mark.parametrize("raw", [
    "http://169.254.169.254/latest/meta-data/spot/instance-action",  # the seed's documented default
    "http://169.254.169.254/latest/meta-data/spot/instance-action/",
    "http://169.254.169.254",
    "http://169.254.169.254/",
])
def test_imds_url_takes_the_seed_url_or_a_base(raw):
    assert load_config({"IMDS_URL": raw}).imds_url == "http://169.254.169.254"


def test_imds_url_keeps_a_port_and_ipv6_host():
    seed_form = "http://[fd00:ec2::254]:8080/latest/meta-data/spot/instance-action"
    assert load_config({"IMDS_URL": seed_form}).imds_url == "http://[fd00:ec2::254]:8080"


@pytest.mark.parametrize("raw,words", [
    ("http://169.254.169.254/latest/meta-data/", "path"),
    ("http://169.254.169.254/latest/meta-data/spot/instance-action/latest", "path"),
    ("http://169.254.169.254/latest/api/token", "path"),
    ("http://169.254.169.254/?debug=1", "query"),
    ("http://169.254.169.254/#x", "fragment"),
    ("http://user:pw@169.254.169.254", "user"),
])
def test_imds_url_with_any_other_path_is_refused(raw, words):
    with pytest.raises(ConfigError, match=r"^IMDS_URL .*" + words):
        load_config({"IMDS_URL": raw})


def test_simulation_with_a_control_token_would_do_nothing_so_it_is_refused():
    # Documented: ALLOW_SIMULATE_INTERRUPTION=true turns on /shutdown and /simulate/*; a CONTROL_TOKEN
    # switches production mode on, which turns them off again without a word.
    with pytest.raises(ConfigError, match="^ALLOW_SIMULATE_INTERRUPTION=true .*CONTROL_TOKEN"):
        load_config({"ALLOW_SIMULATE_INTERRUPTION": "true", "CONTROL_TOKEN": CONTROL})
    assert load_config({"ALLOW_SIMULATE_INTERRUPTION": "false", "CONTROL_TOKEN": CONTROL}).production


def test_retry_backoff_above_the_cap_is_refused():
    # The backoff is capped at 300 s: a larger base would be accepted and mean 300.
    with pytest.raises(ConfigError, match="^RETRY_BACKOFF_SECONDS must be at most 300"):
        load_config({"RETRY_BACKOFF_SECONDS": "600"})
    assert load_config({"RETRY_BACKOFF_SECONDS": "300"}).retry_backoff_seconds == 300


@pytest.mark.parametrize("poll,margin", [("5", "120"), ("60", "60"), ("130", "0")])
def test_a_notice_seen_too_late_for_any_grace_is_refused(poll, margin):
    # A Spot notice comes two minutes ahead: with poll + margin >= 120 s a notice can be seen when its
    # deadline has already passed, and the job in flight is given back at once instead of finishing.
    with pytest.raises(ConfigError, match="POLL_INTERVAL_SECONDS.*NOTICE_MARGIN_SECONDS"):
        load_config({"POLL_INTERVAL_SECONDS": poll, "NOTICE_MARGIN_SECONDS": margin})
    # Without the watcher there is no notice, so the values do not matter.
    load_config({"POLL_INTERVAL_SECONDS": poll, "NOTICE_MARGIN_SECONDS": margin,
                 "SPOT_WATCHER_ENABLED": "false"})


def test_database_url_query_would_be_part_of_the_file_name_so_it_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="^DATABASE_URL .*query"):
        load_config({"DATABASE_URL": f"sqlite:///{tmp_path}/jobs.db?mode=ro"})


@pytest.mark.parametrize("form", ["{tmp}/jobs.db", "sqlite:///{tmp}/jobs.db"])
def test_database_url_takes_a_plain_path_and_the_url_form(tmp_path, form):
    # Issue 17, item 4: the plain path (the README's third form, the seed's "path to SQLite file") crashed.
    assert load_config({"DATABASE_URL": form.format(tmp=tmp_path)}).database_path == str(tmp_path / "jobs.db")


def test_a_plain_path_may_hold_what_a_url_may_not(tmp_path):
    # A file name with '?' is a file name: only the URL form has a query to refuse.
    assert load_config({"DATABASE_URL": f"{tmp_path}/jobs?.db"}).database_path == f"{tmp_path}/jobs?.db"


@pytest.mark.parametrize("host", ["[::1]", "127.0.0.1:8080", "bad host", "a/b"])
def test_host_must_be_a_bare_address(host):
    with pytest.raises(ConfigError, match="^HOST "):
        load_config({"HOST": host})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "worker.internal"])
def test_production_on_the_network_needs_a_jobs_token(host):
    with pytest.raises(ConfigError, match=f"^JOBS_TOKEN .*HOST={host}"):
        load_config({"HOST": host})
    with pytest.raises(ConfigError, match="^JOBS_TOKEN "):
        load_config({"HOST": host, "CONTROL_TOKEN": CONTROL})
    assert load_config({"HOST": host, "JOBS_TOKEN": JOBS}).jobs_token == JOBS
    # Development mode on the network is the operator's explicit choice (and documented as unsafe).
    assert load_config({"HOST": host, "ALLOW_SIMULATE_INTERRUPTION": "true"}).jobs_token is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_loopback_needs_no_jobs_token(host):
    assert load_config({"HOST": host}).jobs_token is None


def test_jobs_token_rules():
    with pytest.raises(ConfigError, match="^JOBS_TOKEN must be at least 16 characters"):
        load_config({"JOBS_TOKEN": "short"})
    # One token for both would let every job client drain the worker.
    with pytest.raises(ConfigError, match="^JOBS_TOKEN must differ from CONTROL_TOKEN"):
        load_config({"JOBS_TOKEN": CONTROL, "CONTROL_TOKEN": CONTROL})


def test_tokens_stay_out_of_the_config_repr():
    config = load_config({"JOBS_TOKEN": JOBS, "CONTROL_TOKEN": CONTROL})
    assert JOBS not in repr(config) and CONTROL not in repr(config)


def test_a_fault_in_reading_the_settings_is_not_hidden_behind_a_second_one(monkeypatch):
    # Issue 17, item 4: main's handler for a database that cannot be opened named config.database_path
    # while config was unset, so a fault in load_config surfaced as an UnboundLocalError in main.
    from spot_drain_worker import server

    def broken():
        raise RuntimeError("the settings reader broke")

    monkeypatch.setattr(server, "load_config", broken)
    with pytest.raises(RuntimeError, match="the settings reader broke"):
        server.main([])
