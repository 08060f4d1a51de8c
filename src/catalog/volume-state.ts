// The lifecycle of a volume or snapshot row. The intent state (creating,
// deleting) is written before the backend is touched; the outcome after.
//
//   creating --> available --> deleting --> (row removed)
//      |             |             |
//      +---------> error <---------+      error --> deleting
export type ObjectState = 'creating' | 'available' | 'deleting' | 'error';

export const TRANSITIONAL_STATES: readonly ObjectState[] = ['creating', 'deleting'];

const ALLOWED: Record<ObjectState, readonly ObjectState[]> = {
  creating: ['available', 'error'],
  available: ['deleting', 'error'],
  deleting: ['error'],
  error: ['deleting'],
};

export function canTransition(from: ObjectState, to: ObjectState): boolean {
  return ALLOWED[from].includes(to);
}
