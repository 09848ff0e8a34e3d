// Break-glass: emergency, time-limited access to one patient outside the care team, with a
// reason; flagged in the audit log for review.
import { json } from '../api';
import { errorMessage } from '../components';
import { h, message, replace } from '../dom';

export function render(root: HTMLElement, [patient]: string[]): void {
  const pid = h('input', { id: 'bg-patient', name: 'patient', required: true, value: patient ?? '', autocomplete: 'off' });
  const reason = h('textarea', { id: 'bg-reason', name: 'reason', required: true, minlength: '10', maxlength: '1024', rows: '3' });
  const status = h('div', { 'aria-live': 'polite' });
  const form = h(
    'form',
    { class: 'card narrow', 'data-testid': 'break-glass-form' },
    h('p', {}, 'Access to a patient outside your care team is granted for a short time, recorded with your reason and flagged for review.'),
    h('label', { for: 'bg-patient' }, 'Patient ID'),
    pid,
    h('label', { for: 'bg-reason' }, 'Reason (at least 10 characters)'),
    reason,
    h('button', { type: 'submit', class: 'btn btn-danger' }, 'Break the glass'),
    status,
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const id = pid.value.trim();
    json<{ expires_at: string }>('/api/break-glass', {
      method: 'POST',
      body: JSON.stringify({ patient_id: id, reason: reason.value.trim() }),
    })
      .then((r) =>
        replace(
          status,
          message(`Access to ${id} until ${new Date(r.expires_at).toLocaleTimeString()}.`, 'ok'),
          h('a', { class: 'btn', href: `#/patients/${encodeURIComponent(id)}` }, 'Open the patient'),
        ),
      )
      .catch((err: unknown) => replace(status, message(errorMessage(err), 'error')));
  });
  replace(root, h('h1', {}, 'Emergency access'), form);
}
