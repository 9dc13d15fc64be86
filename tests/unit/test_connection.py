"""spot_pool_get restates amazon.aws's connection options (to avoid importing boto3); they must not drift."""

from __future__ import annotations

from ansible_collections.amazon.aws.plugins.module_utils.modules import aws_argument_spec

from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import connection


def test_connection_options_match_amazon_aws_exactly():
    ours, theirs = connection.connection_argument_spec(), aws_argument_spec()
    assert sorted(ours) == sorted(theirs)
    for name, spec in theirs.items():
        mine = ours[name]
        for key in ("type", "default", "aliases", "no_log", "choices", "elements"):
            assert mine.get(key) == spec.get(key), (name, key)
        assert (mine.get("fallback") or (None, None))[1] == (spec.get("fallback") or (None, None))[1], name


def test_child_environment_carries_credentials_only_in_the_environment():
    params = {"access_key": "AKIAEXAMPLE", "secret_key": "s3cr3t", "session_token": None, "profile": None,
              "endpoint_url": "http://127.0.0.1:5000", "validate_certs": False, "aws_ca_bundle": None}
    env = connection.child_environment(params, "eu-west-1", base={"AWS_URL": "http://old", "PATH": "/bin",
                                                                  "AWS_SESSION_TOKEN": "stale"})
    assert env["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE" and env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert env["AWS_DEFAULT_REGION"] == env["AWS_REGION"] == "eu-west-1"
    assert env[connection.ENDPOINT_ENV] == "http://127.0.0.1:5000"
    assert env[connection.VERIFY_ENV] == "0"
    assert "AWS_URL" not in env and env["PATH"] == "/bin"


def test_a_profile_wins_over_keys_left_in_the_controller_environment():
    params = {"profile": "ci", "access_key": None, "secret_key": None, "endpoint_url": None}
    env = connection.child_environment(params, None, base={"AWS_ACCESS_KEY_ID": "other", "AWS_SECRET_ACCESS_KEY": "x"})
    assert env["AWS_PROFILE"] == "ci"
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
