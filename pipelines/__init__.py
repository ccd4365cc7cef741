"""Plain, typed stages (no Prefect, no Ray), one sub-package per flow family: ``build``, ``train``,
``evaluate``. Shared by all: ``version`` (the code version) and ``contact_sheet``."""
