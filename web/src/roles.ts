// What each role finds in the navigation, and where it lands after logging in.
// The server enforces every rule whatever the UI shows; this only hides what would fail.
import type { Role } from './api';

export const NAV: Record<Role, [string, string][]> = {
  doctor: [
    ['#/worklist', 'Worklist'],
    ['#/upload', 'Upload'],
    ['#/shares', 'Shares'],
    ['#/break-glass', 'Emergency access'],
  ],
  service: [
    ['#/worklist', 'Studies'],
    ['#/upload', 'Upload'],
  ],
  expert: [['#/shares', 'Shared with me']],
  patient: [['#/me', 'My records']],
  admin: [
    ['#/admin', 'Cluster'],
    ['#/admin/users', 'Users'],
    ['#/admin/audit', 'Audit log'],
    ['#/break-glass', 'Emergency access'],
    ['#/worklist', 'Break-glass studies'],
  ],
};

export function homeOf(role: Role): string {
  return NAV[role]?.[0]?.[0] ?? '#/login';
}

