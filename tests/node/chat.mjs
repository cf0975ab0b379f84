// An Express chat on @fanoutio/serve-grip 2.0 / @fanoutio/grip 4.3 over WebSocket-over-HTTP, as a
// user writes one (serve-grip's README example, plus presence counting):
//   OPEN  -> accept, subscribe to the room with a `c:` control message, count it
//   TEXT  -> publish a ws-message to the room (every member gets it), and echo "ack:<text>" to
//            the sender only (in the response's events)
//   CLOSE -> count it and answer with a close
// GET /stats -> {"opens": N, "closes": N, "messages": N}.  The port it listens on is printed as
// "listening <port>" on stdout (the test waits for that line).
// Environment: GRIP_URL (the proxy's publish endpoint), PORT (default: any free port), ROOM
// (default "room").
import express from 'express';
import { ServeGrip } from '@fanoutio/serve-grip';
import { WebSocketMessageFormat } from '@fanoutio/grip';

const room = process.env.ROOM || 'room';
const serveGrip = new ServeGrip({ grip: { control_uri: process.env.GRIP_URL } });
const stats = { opens: 0, closes: 0, messages: 0 };

const app = express();
app.use(serveGrip);

app.post('/chat', async (req, res) => {
  const ws = req.grip.wsContext;
  if (ws == null) {
    res.statusCode = 400;
    res.end('[not a websocket request]\n');
    return;
  }
  if (ws.isOpening()) {
    ws.accept();
    ws.subscribe(room);
    stats.opens += 1;
  }
  while (ws.canRecv()) {
    let message;
    try {
      message = ws.recv();
    } catch (e) {
      break; // DISCONNECT: the client vanished, nothing to answer
    }
    if (message == null) {
      stats.closes += 1;
      ws.close();
      break;
    }
    stats.messages += 1;
    ws.send('ack:' + message);
    await serveGrip.getPublisher().publishFormats(room, new WebSocketMessageFormat(message));
  }
  res.end();
});

app.get('/stats', (req, res) => {
  res.json(stats);
});

const server = app.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log('listening ' + server.address().port);
});
