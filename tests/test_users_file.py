"""The users file: hashes (argon2id, bcrypt), reload on change, constant-time refusal, the `users` CLI."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time

import argon2
import bcrypt
import pytest
import yaml
from click.testing import CliRunner

from authportal.authentication.users_file import UsersFileError, UsersFileProvider, parse_users_file
from authportal.cli import main
from authportal.config import FileBackendConfig, PasswordHashConfig
from authportal.passwords import PasswordHasher
from tests.support.portal import TEST_HASH, USERS, hashed, users_document


def provider_for(path, watch=False) -> UsersFileProvider:
    return UsersFileProvider(FileBackendConfig(path=path, watch=watch, password=PasswordHashConfig(**TEST_HASH)),
                             PasswordHasher(PasswordHashConfig(**TEST_HASH)))


@pytest.fixture
def users_path(tmp_path):
    path = tmp_path / "users.yml"
    path.write_text(yaml.safe_dump(users_document()))
    return path


def test_hash_password_stdin_prints_argon2id():
    result = CliRunner().invoke(main, ["hash-password", "--stdin"], input="pw\n")
    assert result.exit_code == 0
    encoded = result.output.strip()
    assert encoded.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert argon2.PasswordHasher().verify(encoded, "pw")
    assert "pw" not in encoded.split("$")[-1]


def test_hash_password_refuses_empty():
    result = CliRunner().invoke(main, ["hash-password", "--stdin"], input="\n")
    assert result.exit_code == 2


@pytest.mark.parametrize("command", [["hash-password"], ["users", "add", "--file", "USERS", "erin"]],
                         ids=["hash-password", "users-add"])
def test_without_a_terminal_the_password_prompt_points_to_stdin(users_path, command):
    """`echo pw | authportal hash-password` in a script or a container: no Python warning, no "Aborted!"."""
    before = users_path.read_text()
    command = [str(users_path) if arg == "USERS" else arg for arg in command]
    result = subprocess.run([sys.executable, "-m", "authportal", *command], input="pw\n", capture_output=True,
                            text=True, timeout=60, start_new_session=True)  # no controlling terminal
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: no terminal: use --stdin to read the password from standard input\n"
    assert users_path.read_text() == before  # erin was not added


def test_bcrypt_hashes_from_htpasswd_verify(tmp_path):
    hashed = bcrypt.hashpw(b"from-htpasswd", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")
    path = tmp_path / "users.yml"
    path.write_text(yaml.safe_dump({"users": {"grafana": {"password": hashed, "groups": ["monitoring"]}}}))
    provider = provider_for(path)
    details = provider.check_password("grafana", "from-htpasswd")
    assert details is not None and details.groups == ("monitoring",)
    assert provider.check_password("grafana", "wrong") is None


@pytest.mark.parametrize("hashed, reason", [
    ("$apr1$abc$def", "Apache MD5"),
    ("$6$salt$hash", "SHA512-crypt"),
    ("{SHA}abc=", "unsalted SHA-1"),
    ("plaintext", "plain-text passwords are refused"),
])
def test_weak_hash_formats_are_refused_with_a_reason(tmp_path, hashed, reason):
    path = tmp_path / "users.yml"
    path.write_text(yaml.safe_dump({"users": {"old": {"password": hashed}}}))
    with pytest.raises(UsersFileError) as caught:
        parse_users_file(path)
    assert reason in str(caught.value) and "users.old.password" in str(caught.value)


def test_users_file_reload_change_malformed_revert(users_path, caplog):
    provider = provider_for(users_path)
    assert provider.check_password("bob", USERS["bob"]["password"]) is not None
    # change: bob gets a new password
    changed = {name: dict(fields) for name, fields in USERS.items()}
    changed["bob"]["password"] = "changed-password"
    users_path.write_text(yaml.safe_dump(users_document(changed)))
    assert provider.reload_if_changed()
    assert provider.check_password("bob", "changed-password") is not None
    assert provider.check_password("bob", USERS["bob"]["password"]) is None
    assert provider.health() is None
    # malformed: the last good version keeps serving, health says why
    users_path.write_text("users:\n  bob: [not, a, mapping\n")
    assert not provider.reload_if_changed()
    assert provider.check_password("bob", "changed-password") is not None
    assert "malformed YAML" in provider.health()
    assert "users file not reloaded, the last good version keeps serving" in caplog.text
    # revert to a valid file: serves again, health clears
    users_path.write_text(yaml.safe_dump(users_document()))
    assert provider.reload_if_changed()
    assert provider.check_password("bob", USERS["bob"]["password"]) is not None
    assert provider.health() is None


BOB_HASH = hashed(USERS["bob"]["password"])


def test_a_user_listed_twice_is_refused(tmp_path):
    path = tmp_path / "users.yml"
    entry = f"    password: '{BOB_HASH}'\n"
    path.write_text("users:\n  bob:\n" + entry + "  alice:\n" + entry + "  bob:\n" + entry)
    with pytest.raises(UsersFileError, match=r"malformed YAML \(duplicate mapping key: 'bob'\)"):
        parse_users_file(path)


def test_yaml_1_2_scalars(tmp_path):
    # YAML 1.2: `yes` and `no` are words (a display name "no" stays "no"); `disabled` takes true/false or yes/no.
    path = tmp_path / "users.yml"
    path.write_text(f"users:\n  no:\n    password: '{BOB_HASH}'\n    displayname: no\n"
                    "    disabled: yes\n    groups: [on, off]\n")
    entry = parse_users_file(path)["no"]
    assert (entry.displayname, entry.disabled, entry.groups) == ("no", True, ["on", "off"])


def test_watcher_picks_up_changes_without_being_asked(users_path):
    from tests.servers import wait_until

    provider = UsersFileProvider(FileBackendConfig(path=users_path, password=PasswordHashConfig(**TEST_HASH)),
                                 PasswordHasher(PasswordHashConfig(**TEST_HASH)), poll_interval=0.05)
    try:
        users = dict(USERS)
        users["erin"] = {"password": "erin-pass", "groups": []}
        users_path.write_text(yaml.safe_dump(users_document(users)))
        wait_until(lambda: provider.get_details("erin") is not None, timeout=30, what="users file reload")
    finally:
        provider.close()


def test_unknown_users_cost_about_as_much_as_known_ones(tmp_path):
    """Timing must not reveal whether a user exists: unknown users are checked against a dummy hash."""
    params = {"iterations": 2, "memory": 16384, "parallelism": 1}
    path = tmp_path / "users.yml"
    hasher = PasswordHasher(PasswordHashConfig(**params))
    path.write_text(yaml.safe_dump({"users": {"bob": {"password": hasher.hash("right")}}}))
    provider = UsersFileProvider(FileBackendConfig(path=path, watch=False, password=PasswordHashConfig(**params)),
                                 hasher)

    samples: dict[str, list[float]] = {"bob": [], "nobody": []}
    for _ in range(21):  # interleaved, so background load hits both sides alike
        for user, times in samples.items():
            started = time.perf_counter()
            provider.check_password(user, "wrong")
            times.append(time.perf_counter() - started)
    known, unknown = statistics.median(samples["bob"]), statistics.median(samples["nobody"])
    # Without the dummy hash an unknown user costs next to nothing (a ratio near 0): medians of interleaved
    # samples and a factor of 2 either way leave a busy machine room and still catch that.
    assert 0.5 < unknown / known < 2.0, (known, unknown)


def test_users_cli_add_passwd_disable_list_keeps_comments(tmp_path):
    path = tmp_path / "users.yml"
    path.write_text("# our team\nusers:\n  # the boss\n  zoe:\n    password: \"" + bcrypt.hashpw(b"z", bcrypt.gensalt(4)).decode()
                    + "\"\n    groups: [admins]\n")
    path.chmod(0o640)
    runner = CliRunner()
    added = runner.invoke(main, ["users", "add", "--file", str(path), "yan", "--group", "monitoring",
                                 "--name", "Yan", "--stdin"], input="yan-password\n")
    assert added.exit_code == 0, added.output
    duplicate = runner.invoke(main, ["users", "add", "--file", str(path), "yan", "--stdin"], input="x\n")
    assert duplicate.exit_code == 2 and "already exists" in duplicate.output
    assert runner.invoke(main, ["users", "passwd", "--file", str(path), "yan", "--stdin"],
                         input="new-password\n").exit_code == 0
    assert runner.invoke(main, ["users", "disable", "--file", str(path), "zoe"]).exit_code == 0
    text = path.read_text()
    assert "# our team" in text and "# the boss" in text
    assert "    password: $argon2id$" in text and "password: \n" not in text  # one line per hash, no wrapping
    provider = provider_for(path)
    assert provider.check_password("yan", "new-password").display_name == "Yan"
    assert provider.get_details("zoe") is None  # disabled
    listing = runner.invoke(main, ["users", "list", "--file", str(path)])
    assert "zoe" in listing.output and "disabled" in listing.output and "monitoring" in listing.output
    assert path.stat().st_mode & 0o777 == 0o640  # the file's mode survives the atomic rewrite
    assert not list(tmp_path.glob(".users.yml.*"))  # no temp file left behind


def test_users_import_from_prometheus_web_config_and_htpasswd(tmp_path):
    hashed = bcrypt.hashpw(b"scrape", bcrypt.gensalt(4)).decode()
    web_config = tmp_path / "web-config.yml"
    web_config.write_text(yaml.safe_dump({"basic_auth_users": {"grafana": hashed}}))
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"ops:{hashed}\n")
    users = tmp_path / "users.yml"
    runner = CliRunner()
    assert runner.invoke(main, ["users", "import", "--file", str(users), str(web_config)]).exit_code == 0
    assert runner.invoke(main, ["users", "import", "--file", str(users), str(htpasswd)]).exit_code == 0
    provider = provider_for(users)
    assert provider.check_password("grafana", "scrape") and provider.check_password("ops", "scrape")
    weak = tmp_path / "weak"
    weak.write_text("old:$apr1$x$y\n")
    refused = runner.invoke(main, ["users", "import", "--file", str(users), str(weak)])
    assert refused.exit_code == 2 and "Apache MD5" in refused.output
