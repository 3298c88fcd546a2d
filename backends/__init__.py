"""Adapters between annotation platforms and the polypseg core, one subpackage per platform
(`labelstudio`, `cvat`), plus what both share: `serving` (the settings a server reads at start)
and `request_errors` (a bad request and its HTTP status). Each platform plugs its label source
and server into the core through the `polypseg.plugins` entry points (its `plugin` module)."""
