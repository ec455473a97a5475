"""Every test gets its own normfree cache (budget speed records), never the user's."""

import pytest


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NORMFREE_CACHE", str(tmp_path_factory.mktemp("normfree-cache")))
