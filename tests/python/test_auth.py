"""A worker with --auth-token-file: kvds.Client authenticates over TCP with
the token named by $KVDS_AUTH_TOKEN_FILE; without it, AuthError."""
import os

import pytest

import kvds


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("python-side shared secret\n")
    os.chmod(path, 0o600)
    return str(path)


def test_env_var_token(make_worker, token_file, tmp_path, monkeypatch):
    # The Worker fixture pings it over TCP while starting: with the token.
    monkeypatch.setenv("KVDS_AUTH_TOKEN_FILE", token_file)
    w = make_worker("16MiB", ["--auth-token-file", token_file])
    with kvds.Client(w.tcp) as c:
        c.put(b"auth-key", b"secret value")
        assert c.get(b"auth-key") == b"secret value"
    with kvds.Client(w.addr) as c:  # still upgrades to shared memory
        assert c.get(b"auth-key") == b"secret value"

    monkeypatch.delenv("KVDS_AUTH_TOKEN_FILE")
    with pytest.raises(kvds.AuthError) as ei:
        kvds.Client(w.tcp)
    assert ei.value.code == kvds.E_AUTH
    with kvds.Client(w.unix) as c:  # the Unix socket needs no token
        assert c.get(b"auth-key") == b"secret value"

    wrong = tmp_path / "wrong"
    wrong.write_text("another shared secret\n")
    os.chmod(wrong, 0o600)
    monkeypatch.setenv("KVDS_AUTH_TOKEN_FILE", str(wrong))
    with pytest.raises(kvds.AuthError):
        kvds.Client(w.tcp)
    w.stop()
