import pytest
from cryptography.fernet import Fernet

from jobsite import crypto


@pytest.fixture
def keys(settings):
    def use(*keys: bytes) -> None:
        settings.ENCRYPTION_KEYS = [key.decode() for key in keys]
        crypto.get_fernet.cache_clear()

    yield use
    crypto.get_fernet.cache_clear()


def test_round_trip_and_rotation(keys) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    keys(old)
    token = crypto.encrypt("s3cret")
    assert "s3cret" not in token
    keys(new, old)
    assert crypto.decrypt(token) == "s3cret"
    rotated = crypto.rotate(token)
    keys(new)
    assert crypto.decrypt(rotated) == "s3cret"
    with pytest.raises(crypto.InvalidToken):
        crypto.decrypt(token)
