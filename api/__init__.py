"""The FastAPI service and the web page served by `xmodal serve`."""
