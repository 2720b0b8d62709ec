"""confbus services. Each sub-package is one service; they never import each other and
share only ``schemas`` and ``services.runtime``."""
