"""In step with the broker: ``link`` (the ZeroMQ SUB/DEALER link), ``tracker`` (per-channel
epoch and seq: deliver, drop duplicates, repair gaps; sans-IO), ``hub`` (channel -> sessions),
``resume`` (client cursors resolved against broker history), ``repair`` (link loss and epoch
changes), ``deliver`` (the hot path: encode once, one ``send`` per connection)."""
