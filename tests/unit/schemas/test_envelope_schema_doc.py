import json
from pathlib import Path

from schemas.envelope import EventEnvelope

DOC = Path(__file__).resolve().parents[3] / "docs" / "envelope.schema.json"


def test_published_envelope_schema_is_current():
    """docs/envelope.schema.json is the producer contract; regenerate it when the model changes:
    python -c "import json; from schemas.envelope import EventEnvelope as E;
    print(json.dumps(E.model_json_schema(), indent=2))" > docs/envelope.schema.json"""
    assert json.loads(DOC.read_text()) == EventEnvelope.model_json_schema()
