"""models role of Corolla: how a Hugging Face model is cut into blocks (see ARCHITECTURE.md).

Entry points: models.span.BlockSpan (blocks a node serves), models.local_parts.LocalParts
(what a client runs itself), models.manifest_builder.load_manifest, models.make_model.make_model.
"""

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "mixtral", "bloom", "falcon")
