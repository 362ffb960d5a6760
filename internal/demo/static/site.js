// The demo site's pages: the waiting page of a protected action (#wait) and
// the link page (#link). Both follow approvald's watch socket, reconnect it
// with backoff, and fall back to polling /v1/watch/state when it cannot open.
'use strict';

(function () {
  var FINAL = { approved: 1, denied: 1, expired: 1, cancelled: 1, linked: 1 };

  // watch follows the object of token: onFrame gets every state (the full
  // public state, as JSON); it stops after a final one. onMode tells
  // "live", "reconnecting" or "polling".
  function watch(token, onFrame, onMode) {
    var stopped = false, attempt = 0, failedOpens = 0, pollTimer = null, retryTimer = null, ws = null;

    function handle(f) {
      if (stopped || !f || !f.status) return;
      onFrame(f);
      if (FINAL[f.status]) stop();
    }
    function stop() {
      stopped = true;
      clearTimeout(pollTimer);
      clearTimeout(retryTimer);
      if (ws) { try { ws.close(1000); } catch (e) { /* closed */ } }
    }
    function connect() {
      if (stopped) return;
      var opened = false;
      var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
      try {
        ws = new WebSocket(proto + '//' + location.host + '/v1/watch?token=' + encodeURIComponent(token));
      } catch (e) {
        failedOpens++;
        return retry();
      }
      ws.onopen = function () { opened = true; attempt = 0; failedOpens = 0; onMode('live'); };
      ws.onmessage = function (ev) {
        try { handle(JSON.parse(ev.data)); } catch (e) { /* not JSON: ignore */ }
      };
      ws.onclose = function () {
        ws = null;
        if (stopped) return;
        if (!opened) failedOpens++;
        retry();
      };
    }
    function retry() {
      if (stopped) return;
      if (failedOpens >= 3) return poll(); // the socket cannot open here: poll instead
      var delay = Math.min(15000, 500 * Math.pow(2, attempt++)) + Math.random() * 300;
      onMode('reconnecting');
      retryTimer = setTimeout(connect, delay);
    }
    function poll() {
      if (stopped) return;
      onMode('polling');
      fetch('/v1/watch/state?token=' + encodeURIComponent(token), { cache: 'no-store' })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (f) { if (f) handle(f); })
        .catch(function () { /* try again */ })
        .then(function () { if (!stopped) pollTimer = setTimeout(poll, 2000); });
    }
    connect();
    return stop;
  }

  function showMode(el, mode) {
    if (!el) return;
    el.dataset.mode = mode;
    el.textContent = { live: 'Live updates on.', reconnecting: 'Connection lost: reconnecting…', polling: 'Live updates unavailable: checking every 2 seconds.' }[mode] || '';
  }

  // countdown writes m:ss until the time in el's data (or in get()).
  function countdown(el, get) {
    if (!el) return;
    function tick() {
      var left = Math.max(0, Math.round((Date.parse(get()) - Date.now()) / 1000));
      el.textContent = Math.floor(left / 60) + ':' + String(left % 60).padStart(2, '0');
      el.dataset.seconds = String(left);
    }
    tick();
    return setInterval(tick, 1000);
  }

  var PUSH_TEXT = {
    sent: 'We sent a request to your phone. Open it and approve.',
    no_device: 'No phone is linked to your account: confirm by email.',
    failed: 'We could not reach your phone: confirm by email.',
    disabled: 'Confirm with the link we email you.'
  };

  function waitPage(box) {
    var token = box.dataset.token, id = box.dataset.challenge, expires = box.dataset.expires;
    var status = document.getElementById('wait-status');
    var number = document.getElementById('number');
    var push = document.getElementById('push-status');
    var emailStatus = document.getElementById('email-status');
    var emailButton = document.getElementById('email-button');
    var timer = countdown(document.getElementById('countdown'), function () { return expires; });

    function setEmail(state, text) {
      if (!emailStatus) return;
      emailStatus.dataset.state = state;
      emailStatus.textContent = text;
      emailStatus.className = state === 'failed' ? 'error' : (state === 'sent' ? 'ok' : '');
    }

    watch(token, function (f) {
      if (f.expires_at) expires = f.expires_at;
      if (f.status === 'pending') {
        if (f.number && number) {
          number.textContent = f.number;
          document.getElementById('number-box').hidden = false;
        }
        var d = f.delivery || {};
        if (push && d.push && PUSH_TEXT[d.push]) {
          push.textContent = PUSH_TEXT[d.push];
          push.dataset.push = d.push;
        }
        if (d.email === 'failed') setEmail('failed', 'The email could not be sent. Try again, or approve on your phone.');
        else if (d.email === 'sent' && emailStatus && emailStatus.dataset.state === 'idle') setEmail('sent', 'A link was emailed to you.');
        return;
      }
      clearInterval(timer);
      box.dataset.state = f.status;
      if (f.status === 'approved') {
        status.textContent = 'Approved.';
        // The site does not take the browser's word: it asks approvald.
        document.getElementById('done-form').submit();
      }
      if (f.status === 'denied') status.textContent = 'Denied.';
      if (f.status === 'expired') status.textContent = 'Expired.';
    }, function (mode) { showMode(document.getElementById('connection'), mode); });

    if (emailButton) {
      emailButton.addEventListener('click', function () {
        emailButton.disabled = true;
        setEmail('sending', 'Sending…');
        fetch('/v1/challenges/' + encodeURIComponent(id) + '/email', {
          method: 'POST', cache: 'no-store', headers: { Authorization: 'Bearer ' + token }
        }).then(function (r) {
          return r.json().catch(function () { return {}; }).then(function (body) { return { ok: r.ok, body: body }; });
        }).then(function (res) {
          if (res.ok) {
            if (res.body.expires_at) expires = res.body.expires_at;
            setEmail('sent', 'Code sent to ' + res.body.sent_to + '. Open the link in the email to approve.');
            var hint = document.getElementById('mailbox-hint');
            if (hint) hint.hidden = false;
          } else {
            setEmail('failed', 'Could not send the email: ' + (res.body.detail || res.body.title || 'error') + '.');
          }
          emailButton.disabled = false;
          emailButton.textContent = 'Send again';
        }).catch(function () {
          setEmail('failed', 'Could not send the email: the network failed.');
          emailButton.disabled = false;
        });
      });
    }
  }

  function linkPage(box) {
    var expires = box.dataset.expires;
    var status = document.getElementById('link-status');
    var timer = countdown(document.getElementById('countdown'), function () { return expires; });
    watch(box.dataset.token, function (f) {
      if (f.expires_at) expires = f.expires_at;
      if (f.status === 'pending') return;
      clearInterval(timer);
      if (f.status === 'linked') {
        document.getElementById('linked-device-name').textContent = (f.device && f.device.name) || 'Your device';
        status.textContent = 'Linked.';
      }
      box.dataset.state = f.status === 'linked' ? 'linked' : 'expired';
      var focus = document.getElementById(f.status === 'linked' ? 'continue-link' : 'new-code-button');
      if (focus) focus.focus();
    }, function (mode) { showMode(document.getElementById('connection'), mode); });
  }

  var w = document.getElementById('wait');
  if (w) waitPage(w);
  var l = document.getElementById('link');
  if (l) linkPage(l);
})();
