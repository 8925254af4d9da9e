"""What Hubbub writes into Redis: the key schema (:mod:`.keys`) and the stream entries
(:mod:`.envelopes`). Every key name and entry field name is spelled here and nowhere else."""
