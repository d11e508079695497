/*
 * SIR donate widget: a donate button for a page that holds only a publishable key.
 *
 *   <div data-sir-donate data-key="pk_test_..." data-nonprofit="american-red-cross"
 *        data-amount="2500" data-provider="stripe"></div>
 *   <script src="https://<sir host>/widget.js" async></script>
 *
 * Attributes: data-key, data-nonprofit (slug), data-amount (cents), data-currency (USD),
 * data-frequency (once|monthly), data-provider (every.org|stripe), data-api (the engine's
 * origin; default: where this script came from), data-email, data-first-name, data-last-name,
 * data-user (partnerUserId; honoured only for an existing user with the same email),
 * data-poll-ms (status polling interval, default 2000).
 *
 * Flow: the donor fills name and email and clicks Donate; the widget calls
 * POST /v1/partner/donations/create-link, opens the link in a new window, polls
 * GET /v1/partner/donations/status/{id} and shows the tokens the donor earned.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  var scriptOrigin = script && script.src ? new URL(script.src, location.href).origin : location.origin;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text) node.textContent = text;
    return node;
  }

  function money(cents, currency) {
    return (cents / 100).toFixed(2) + " " + currency;
  }

  function api(config, method, path, body) {
    var headers = { "X-Partner-Key": config.key };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(config.api + path, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      mode: "cors",
      credentials: "omit"
    }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) {
          var error = (data && data.error) || {};
          var failure = new Error(error.message || ("HTTP " + response.status));
          failure.code = error.code || "HTTP_" + response.status;
          throw failure;
        }
        return data;
      });
    });
  }

  var STYLE = ".sir-widget{font-family:system-ui,sans-serif;max-width:360px;border:1px solid #dde;" +
    "border-radius:10px;padding:14px;display:grid;gap:8px;background:#fff}" +
    ".sir-widget .sir-title{font-weight:600}" +
    ".sir-widget input{padding:8px;border:1px solid #ccd;border-radius:6px;font:inherit}" +
    ".sir-widget .sir-donate{padding:10px;border:0;border-radius:6px;background:#635bff;" +
    "color:#fff;font:inherit;cursor:pointer}.sir-widget .sir-donate:disabled{opacity:.6}" +
    ".sir-widget .sir-status[data-state=error]{color:#b00020}" +
    ".sir-widget .sir-status[data-state=completed]{color:#0a7d38;font-weight:600}";

  function addStyle() {
    if (document.getElementById("sir-widget-style")) return;
    var style = el("style", { id: "sir-widget-style" });
    style.textContent = STYLE;
    document.head.appendChild(style);
  }

  function mount(root) {
    var d = root.dataset;
    var config = {
      key: d.key,
      api: (d.api || scriptOrigin).replace(/\/$/, ""),
      nonprofit: d.nonprofit,
      amount: parseInt(d.amount || "0", 10),
      currency: (d.currency || "USD").toUpperCase(),
      frequency: d.frequency || "once",
      provider: d.provider || "every.org",
      user: d.user || null,
      pollMs: parseInt(d.pollMs || "2000", 10)
    };
    root.classList.add("sir-widget");
    root.innerHTML = "";
    var title = el("div", { "class": "sir-title" }, "Donate " + money(config.amount, config.currency));
    var first = el("input", { "class": "sir-first-name", name: "firstName", placeholder: "First name", value: d.firstName || "" });
    var last = el("input", { "class": "sir-last-name", name: "lastName", placeholder: "Last name", value: d.lastName || "" });
    var email = el("input", { "class": "sir-email", name: "email", type: "email", placeholder: "Email", value: d.email || "" });
    var button = el("button", { "class": "sir-donate", type: "button" }, "Donate");
    var status = el("div", { "class": "sir-status", role: "status", "aria-live": "polite" });
    [title, first, last, email, button, status].forEach(function (node) { root.appendChild(node); });

    api(config, "GET", "/v1/partner/organizations/" + encodeURIComponent(config.nonprofit))
      .then(function (org) {
        title.textContent = "Donate " + money(config.amount, config.currency) + " to " + org.name;
      })
      .catch(function () { /* the button still works; create-link reports a bad slug */ });

    function show(text, kind) {
      status.textContent = text;
      status.setAttribute("data-state", kind);
    }

    function poll(id, popup) {
      api(config, "GET", "/v1/partner/donations/status/" + encodeURIComponent(id))
        .then(function (donation) {
          if (donation.status === "COMPLETED") {
            if (donation.donorTokens !== null && donation.donorTokens !== undefined) {
              var reward = el("span", { "class": "sir-reward", "data-tokens": String(donation.donorTokens) },
                String(donation.donorTokens));
              status.textContent = "Thank you! You earned ";
              status.appendChild(reward);
              status.appendChild(document.createTextNode(" SIR tokens."));
              status.setAttribute("data-state", "completed");
            } else {
              show("Thank you! Your donation is complete (no reward: " + donation.rewardError + ").", "completed");
            }
            button.disabled = false;
            return;
          }
          if (donation.status === "FAILED") {
            show("The donation did not go through.", "failed");
            button.disabled = false;
            return;
          }
          setTimeout(function () { poll(id, popup); }, config.pollMs);
        })
        .catch(function (error) {
          if (error.code === "RATE_LIMITED") {
            setTimeout(function () { poll(id, popup); }, config.pollMs * 3);
            return;
          }
          show("Could not read the donation's status: " + error.message, "error");
          button.disabled = false;
        });
    }

    button.addEventListener("click", function () {
      if (!first.value.trim() || !last.value.trim() || !email.value.trim()) {
        show("Please enter your name and email.", "error");
        return;
      }
      button.disabled = true;
      // Open the window now, inside the click, so popup blockers allow it; navigate it later.
      var popup = window.open("", "sir-donation");
      show("Preparing your donation…", "pending");
      var body = {
        nonprofitSlug: config.nonprofit,
        amount: config.amount,
        currency: config.currency,
        frequency: config.frequency,
        provider: config.provider,
        donorEmail: email.value.trim(),
        firstName: first.value.trim(),
        lastName: last.value.trim()
      };
      if (config.user) body.partnerUserId = config.user;
      api(config, "POST", "/v1/partner/donations/create-link", body)
        .then(function (created) {
          root.setAttribute("data-donation-id", created.partnerDonationId);
          if (popup) popup.location.href = created.donationLink;
          else window.open(created.donationLink, "sir-donation");
          show("Complete your donation in the new window…", "waiting");
          poll(created.partnerDonationId, popup);
        })
        .catch(function (error) {
          if (popup) popup.close();
          show("Could not start the donation: " + error.message + " (" + error.code + ")", "error");
          button.disabled = false;
        });
    });
  }

  function start() {
    addStyle();
    var roots = document.querySelectorAll("[data-sir-donate]");
    for (var i = 0; i < roots.length; i++) mount(roots[i]);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
