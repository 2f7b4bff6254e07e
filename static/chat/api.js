// The chat page's JSON endpoints (chat/urls.py). State-changing ones are POSTs carrying Django's
// CSRF token, read from its cookie, in the X-CSRFToken header.

export function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === "csrftoken") return decodeURIComponent(value.join("="));
  }
  return "";
}

export class ApiError extends Error {}

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a 404 page, a login redirect): described by the status below.
  }
  if (response.ok && body !== null) return body;
  if (response.status === 404) throw new ApiError("That conversation no longer exists.");
  throw new ApiError(body?.error?.message || `The server answered ${response.status}.`);
}

export async function postForm(url, fields = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "X-CSRFToken": csrfToken() },
    body: new URLSearchParams(fields),
    credentials: "same-origin",
  });
  return answer(response);
}

/** A file sent as the multipart form field `file` (an import). */
export async function postFile(url, file) {
  const body = new FormData();
  body.append("file", file);
  const response = await fetch(url, {
    method: "POST",
    headers: { "X-CSRFToken": csrfToken() },
    body,
    credentials: "same-origin",
  });
  return answer(response);
}

export async function getJson(url, params = {}) {
  const query = new URLSearchParams(params).toString();
  const response = await fetch(query ? `${url}?${query}` : url, { credentials: "same-origin" });
  return answer(response);
}

/**
 * Whether this browser still has a valid session: the page's own URL answers the page while it
 * does and redirects to the login page once it does not. null when the server cannot be reached.
 */
export async function signedIn() {
  try {
    const response = await fetch(window.location.href, {
      method: "HEAD",
      redirect: "manual",
      cache: "no-store",
      credentials: "same-origin",
    });
    return response.type !== "opaqueredirect";
  } catch {
    return null;
  }
}

/** A POST with a JSON body (the feedback endpoint), answered JSON. */
export async function postJson(url, data) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "X-CSRFToken": csrfToken(), "Content-Type": "application/json" },
    body: JSON.stringify(data),
    credentials: "same-origin",
  });
  return answer(response);
}
