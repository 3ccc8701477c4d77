"""The package version, importable from any layer without importing the package's public API."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's version (a test checks it)


def versions(*packages: str) -> dict[str, str]:
    """dermsynth's version and those of ``packages`` (imported here: call it where they are loaded anyway)."""
    import importlib

    found = {"dermsynth": __version__}
    for name in packages:
        found[name] = importlib.import_module(name).__version__
    return found
