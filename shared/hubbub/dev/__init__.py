"""Running Hubbub on one machine: the ``hubbub`` command (:mod:`.cli`), a real ``redis-server``
as a child process (:mod:`.embedded`), and gateways and workers as child processes
(:mod:`.launcher`, shared with the tests and the benchmark)."""
