# send the example event, keyed by its user (each file is one record)
kcat -P -b localhost:9092 -t events -k user-7 examples/clients/event.json
# print every prediction so far, then exit
kcat -C -b localhost:9092 -t predictions -o beginning -e -q
# dead letters: the reason (dlq.* headers), then the original value
kcat -C -b localhost:9092 -t events.dlq -o beginning -e -q -f '%h\n%s\n'
