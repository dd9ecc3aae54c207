// The demo page's service worker: it shows the notification service's Web
// Push messages while no page of the demo is open, and opens their link
// when clicked. A push carries the in-page notification as JSON:
// {type, notification_id, user_id, title, body, link, cause_event_id}.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let msg = {};
  try {
    msg = event.data ? event.data.json() : {};
  } catch {
    msg = { body: event.data.text() }; // not JSON: shown as it came
  }
  const title = msg.title || "eventbus";
  event.waitUntil((async () => {
    // The tag collapses a notification already shown with the same id,
    // by the page or by a push delivered twice.
    await self.registration.showNotification(title, {
      body: msg.body || "",
      data: { link: msg.link || "/", notification_id: msg.notification_id || "" },
      tag: msg.notification_id || undefined,
    });
    // Open pages say that a push came, once it shows.
    for (const page of await self.clients.matchAll({ type: "window", includeUncontrolled: true })) {
      page.postMessage({ type: "push_shown", notification_id: msg.notification_id || "", title });
    }
  })());
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = new URL(event.notification.data?.link || "/", self.location.origin).href;
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const open = windows.find((w) => w.url === url);
    return open ? open.focus() : self.clients.openWindow(url);
  })());
});
