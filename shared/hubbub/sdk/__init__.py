"""For internal services: the REST client (:mod:`.client`) and the write-only publisher that
appends straight to the publish stream (:mod:`.publisher`)."""
