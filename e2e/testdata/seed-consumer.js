// The consumer of the seed tutorial ("Redis Pub/Sub: Pattern-Based
// Subscriptions", "Cross-Service Communication") as written, but for the
// Redis URL, which the test gives, and the line it prints, which is the
// parsed message whole so that the test can read it.
const redis = require('redis');

(async () => {
  const subscriber = redis.createClient({ url: process.env.REDIS_URL });
  await subscriber.connect();
  // Subscribe to all channels starting with "user:"
  await subscriber.pSubscribe('user:*', (message, channel) => {
    const user = JSON.parse(message);
    console.log(`Message from ${channel}: ${JSON.stringify(user)}`);
  });
  console.error('subscribed');
})();
