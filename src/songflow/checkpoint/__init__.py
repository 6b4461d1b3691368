"""Checkpoints: strict safetensors loading, device/dtype resolution, hub download,
LoRA files, random checkpoints."""
