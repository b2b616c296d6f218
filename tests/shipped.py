"""The result stores that ship with the package, as the store tests read them."""


def shipped_records(name: str) -> list[dict]:
    """The finished runs of the result store ``name`` that ships with the package (``flatcomp_tutorial/results/``);
    a missing store fails (the chapters read it), it is not skipped."""
    import flatcomp_tutorial as fc

    store = fc.store.shipped_store(name)
    assert store is not None and store.exists(), f"{name} is missing from flatcomp_tutorial/results/ (make target?)"
    return fc.store.read_store(store)[0]
