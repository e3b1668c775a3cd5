// The login page: the pasted token is sent once, as JSON, with the console's header (a cross-site
// form cannot send it); the answer sets an HttpOnly session cookie, the token is never stored here.
"use strict";
(function () {
  const form = document.getElementById("login-form");
  if (!form) return;
  const message = document.getElementById("login-message");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    const token = document.getElementById("token").value;
    try {
      const response = await fetch("/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Riskgate-Console": "1" },
        body: JSON.stringify({ token: token }),
      });
      if (response.ok) {
        window.location.assign("/");
        return;
      }
      const body = await response.json().catch(() => ({}));
      message.textContent = (response.status === 403 ? "Not allowed 无权访问: " : "Refused 拒绝: ") + (body.message || response.status);
    } catch (error) {
      message.textContent = "The console did not answer 监测台无响应: " + error;
    }
  });
})();
