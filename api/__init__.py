"""The Litestar ``/v1`` API and the api role's lifecycle (config view, producer, ledger sink)."""
