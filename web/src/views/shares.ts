// Shares: an expert's studies shared with them (with the time left), or the shares a doctor
// granted. Both come from GET /api/shares; the expert's studies open in the viewer.
import { json, me } from '../api';
import { errorMessage, viewerLink } from '../components';
import { formatDuration, h, message, replace } from '../dom';

interface Share {
  study: string;
  description: string | null;
  expert: string;
  expires_at: string;
  seconds_left: number;
  active: boolean;
}

export async function render(root: HTMLElement): Promise<void> {
  const expert = me()?.role === 'expert';
  const list = h('section', { 'aria-live': 'polite' }, message('Loading…'));
  replace(
    root,
    h('h1', {}, expert ? 'Studies shared with me' : 'Studies I shared'),
    h(
      'p',
      { class: 'muted' },
      expert
        ? 'A shared study stays readable until its share expires; the referring doctor can share it again.'
        : 'Share a study from the worklist or a patient timeline.',
    ),
    list,
  );
  try {
    const shares = await json<Share[]>('/api/shares');
    if (!shares.length) {
      replace(list, message(expert ? 'Nothing is shared with you at the moment.' : 'You have not shared any study.'));
      return;
    }
    replace(
      list,
      h(
        'ul',
        { class: 'cards', 'data-testid': 'shares' },
        shares.map((s) =>
          h(
            'li',
            { class: `card share ${s.active ? '' : 'expired'}`, 'data-testid': 'share', 'data-study': s.study },
            h('h3', {}, s.description || 'Study'),
            h('p', { class: 'mono small' }, s.study),
            expert ? null : h('p', {}, `Expert: ${s.expert}`),
            h(
              'p',
              { 'data-testid': 'time-left' },
              s.active ? `${formatDuration(s.seconds_left)} left` : 'expired',
              h('span', { class: 'muted' }, ` · until ${new Date(s.expires_at).toLocaleString()}`),
            ),
            s.active ? viewerLink(s.study, 'Open viewer') : null,
          ),
        ),
      ),
    );
  } catch (err) {
    replace(list, message(errorMessage(err), 'error'));
  }
}
