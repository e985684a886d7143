"""Journey, policy and segment specs: YAML loaded with locations, validated into pydantic models."""
