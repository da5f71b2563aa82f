"""The ClickHouse ledger: DDL migrations, the batched sink, and the readers the API uses.

Only the api role (or a dedicated ledger role) opens ClickHouse; workers never do.
"""
