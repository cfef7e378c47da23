// Send killswitch heartbeats from a Node.js strategy (no dependencies).
// Usage: node heartbeat.js [SOCKET] [INTERVAL_MS] [COUNT]
const http = require('http');

function heartbeat(socketPath = '/run/killswitch/control.sock') {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { socketPath, path: '/heartbeat', method: 'POST', timeout: 1000 },
      (res) => { res.resume(); resolve(res.statusCode === 200); });
    req.on('timeout', () => req.destroy(new Error('heartbeat timed out')));
    req.on('error', reject);
    req.end();
  });
}

const [socketPath = '/run/killswitch/control.sock', interval = '1000', count = '0'] =
  process.argv.slice(2);
let sent = 0;
async function loop() {
  try {
    console.log((await heartbeat(socketPath)) ? 'ok' : 'refused');
  } catch (err) {
    console.error(`heartbeat failed: ${err.message}`);
  }
  sent += 1;
  if (Number(count) === 0 || sent < Number(count)) setTimeout(loop, Number(interval));
}
loop();
