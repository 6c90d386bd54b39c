"""Pretrained weights: readers and converters into vlg's parameter trees.

One module per source format (docs/weights.md): ``torch_reader`` (PyTorch
``.pth``/``.bin`` without code execution), ``files`` (any supported file →
flat arrays), ``timm_vit`` (DeiT/timm ViT), ``augreg`` (AugReg ViT
``.npz``), ``bert`` (Hugging Face BERT), ``albef`` (ALBEF's released
pretraining checkpoints), ``common`` (key matching, layouts, summaries) and
``init`` (``model.init`` of a training run).
"""
