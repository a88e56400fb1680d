"""Pure core: models, key names, validation, masking, rules. No Redis, no processes."""
