// The Node.js service Passerelle is measured against (bench/harness): what
// a team would write for the crm-to-shop job in Node. amqplib consumes,
// the mapping has its code tables written in, the global fetch (undici,
// keep-alive) sends `PUT businesses/{Id}`, and a message is acked after a
// 2xx. The prefetch bounds the messages in flight.
//
//   node service.js AMQP_URL QUEUE BASE_URL CONCURRENCY
//
// Runs until SIGTERM; then it stops taking messages, lets those in flight
// finish and closes the connection.
'use strict';

const amqp = require('amqplib');

const STATUS_CODES = { CLIENT_ACTIVE: 70 };
const COUNTRY_IDS = { FR: 76 };

// The shop body for a CRM account; throws on an unknown status or country.
function shopBusiness(account) {
  const status = STATUS_CODES[account.Status__c];
  const country = COUNTRY_IDS[account.Country__c];
  if (status === undefined) throw new Error(`unknown Status__c ${account.Status__c}`);
  if (country === undefined) throw new Error(`unknown Country__c ${account.Country__c}`);
  return { business: { name: account.Name }, status, country: { id: country } };
}

async function put(base, id, body, messageId) {
  const headers = { 'content-type': 'application/json' };
  if (messageId) headers['idempotency-key'] = messageId;
  const url = new URL(`businesses/${encodeURIComponent(id)}`, base);
  const response = await fetch(url, { method: 'PUT', headers, body });
  await response.arrayBuffer();
  if (!response.ok) throw new Error(`PUT answered ${response.status}`);
}

// Delivers one message and acks it; a message it cannot map is rejected,
// one it could not deliver is requeued.
async function handle(channel, base, message) {
  let account;
  let body;
  try {
    account = JSON.parse(message.content.toString());
    body = JSON.stringify(shopBusiness(account));
  } catch (error) {
    console.error(`node service: rejected: ${error.message}`);
    channel.nack(message, false, false);
    return;
  }
  try {
    await put(base, account.Id, body, message.properties.messageId);
    channel.ack(message);
  } catch (error) {
    console.error(`node service: requeued: ${error.message}`);
    channel.nack(message, false, true);
  }
}

async function main() {
  const [url, queue, base, concurrency] = process.argv.slice(2);
  if (!concurrency) throw new Error('usage: node service.js AMQP_URL QUEUE BASE_URL CONCURRENCY');
  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  await channel.prefetch(Number(concurrency));
  let inFlight = 0;
  let drained = () => {};
  const { consumerTag } = await channel.consume(queue, async (message) => {
    if (message === null) throw new Error('the broker cancelled the consumer');
    inFlight += 1;
    await handle(channel, base, message);
    inFlight -= 1;
    if (inFlight === 0) drained();
  });
  process.once('SIGTERM', async () => {
    await channel.cancel(consumerTag);
    if (inFlight > 0) await new Promise((resolve) => { drained = resolve; });
    await channel.close();
    await connection.close();
  });
}

main().catch((error) => {
  console.error(`node service: ${error.stack || error}`);
  process.exit(1);
});
