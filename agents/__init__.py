"""Faust agents (thin) and the pure logic they call. Pure modules here import no Faust, Kafka or
ClickHouse, so they are unit-tested directly and are deterministic."""
