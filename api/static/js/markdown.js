// Replies are Markdown from a language model: untrusted. markdown-it renders them with raw HTML
// turned off (tags show as text) and refuses javascript:/data: links; DOMPurify then removes
// anything active that could still get through, and the page's Content-Security-Policy forbids
// inline scripts as a last line. User messages never come here: they are set as text.

import markdownit from "../vendor/markdown-it-15.0.3.esm.min.mjs";
import DOMPurify from "../vendor/purify-3.5.0.es.mjs";

const md = markdownit({ html: false, linkify: true, breaks: true, typographer: false });
// An image in a reply would make the browser fetch a URL the model chose: shown as text instead.
md.disable("image");

const SANITIZE = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "img", "form", "input", "button", "textarea", "select", "iframe"],
  FORBID_ATTR: ["style"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** The reply as a sanitized DocumentFragment, ready to insert. */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.render(text), SANITIZE);
}
