"""Running Hubbub on one machine: the ``hubbub`` command (:mod:`.cli`) and a real
``redis-server`` as a child process (:mod:`.embedded`)."""
