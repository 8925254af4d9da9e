"""Redis I/O: how a process reaches Redis (:mod:`.endpoint`), the hot-path pipelined
connection (:mod:`.pipe` over the sans-I/O :mod:`.resp`), the publish stream (:mod:`.stream`)
and membership scripts (:mod:`.membership`)."""
