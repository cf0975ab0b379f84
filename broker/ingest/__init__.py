"""What publishers send the broker, from bytes to sequenced, stored, fanned-out items.

httpapi (Pushpin's HTTP publish API), commands (the command socket's ZRPC), tnetstring (its
codec), auth (JWT on the HTTP API), zap (which Curve clients may connect) and pipeline (batch
-> sequencer -> store -> fan-out, the one path every input feeds).
"""
