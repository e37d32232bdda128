"""goalkeeper.store: Nix 2.8 store formats and the local store. Imports nothing else of ours."""
