// The login page: the OAuth2 password flow of medshard's token API.
import * as session from '../api';
import { h, message, replace } from '../dom';
import { homeOf } from '../roles';

export function render(root: HTMLElement): void {
  const notice = root.dataset.notice;
  const status = h('div', { class: 'status', 'aria-live': 'polite' }, notice ? message(notice) : null);
  const username = h('input', {
    id: 'username',
    name: 'username',
    autocomplete: 'username',
    required: true,
    autocapitalize: 'none',
    spellcheck: 'false',
  });
  const password = h('input', {
    id: 'password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Log in');
  const form = h(
    'form',
    { class: 'card login', 'data-testid': 'login-form' },
    h('h1', {}, 'medshard'),
    h('p', { class: 'muted' }, 'Regional medical image archive. Log in with your hospital account.'),
    h('label', { for: 'username' }, 'Username'),
    username,
    h('label', { for: 'password' }, 'Password'),
    password,
    submit,
    status,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    submit.disabled = true;
    replace(status, message('Logging in…'));
    session
      .login(username.value.trim(), password.value)
      .then((who) => {
        const next = sessionStorage.getItem('medshard.next');
        sessionStorage.removeItem('medshard.next');
        location.hash = next && next !== '#/login' ? next : homeOf(who.role);
      })
      .catch((err: unknown) => {
        const text = err instanceof session.ApiError && err.status === 401
          ? 'Wrong username or password, or the account is disabled.'
          : err instanceof Error ? err.message : String(err);
        replace(status, message(text, 'error'));
        submit.disabled = false;
        password.select();
      });
  });
  replace(root, h('div', { class: 'login-wrap' }, form));
  username.focus();
}
