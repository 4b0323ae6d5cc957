"""`samrt label-studio`: Label Studio's ML backend for interactive SAM segmentation and automatic
pre-annotation, on a samrt server (docs/label-studio.md).

`regions` is Label Studio's data in plain functions (labelling config, context -> prompts, masks ->
brush regions); `backend` answers Label Studio's requests through the SDK; `app` is the web
server (aiohttp) speaking Label Studio's ML backend protocol. The CLI imports this package lazily
(aiohttp, label_studio_converter: the label-studio extra).
"""
