"""Wire contracts (pydantic models) shared by every role. Imports nothing else from Fibric."""
