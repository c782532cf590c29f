"""A checkpoint as a model: its family's record, config, weights, the Transformer that owns its LM
head, the tensor-parallel split beside it, and loading."""
