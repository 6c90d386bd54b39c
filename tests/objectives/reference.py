"""Float64 NumPy re-derivations of the ALBEF objectives, from the docs.

Written from ``docs/objectives.md`` §2 alone, deliberately plain (explicit
loops over rows, explicit exponentials) so that they share no code or
structure with ``vlg/objectives``. Every function takes and returns
float64 NumPy values.
"""

from __future__ import annotations

import numpy as np


def _f64(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def log_softmax_row(row: np.ndarray) -> np.ndarray:
  m = np.max(row)
  return row - m - np.log(np.sum(np.exp(row - m)))


def softmax_row(row: np.ndarray) -> np.ndarray:
  return np.exp(log_softmax_row(row))


def itc_loss(v, w, v_m, w_m, image_queue, text_queue, temp, alpha,
             target_temp=None):
  """§2.1 steps 3–7. ``target_temp`` (default ``temp``) is the τ of the
  momentum similarities; holding it fixed while ``temp`` varies gives the
  loss whose derivative in τ is the stop-gradient one (targets constant).

  Returns:
    (loss, sim_i2t [B, B+Q], sim_t2i [B, B+Q], acc_i2t).
  """
  v, w, v_m, w_m = _f64(v), _f64(w), _f64(v_m), _f64(w_m)
  iq, tq = _f64(image_queue), _f64(text_queue)
  temp = float(temp)
  target_temp = temp if target_temp is None else float(target_temp)
  alpha = float(alpha)
  b = v.shape[0]
  v_all = np.vstack([v_m, iq])   # step 3
  w_all = np.vstack([w_m, tq])
  n = v_all.shape[0]
  sim_i2t = np.zeros((b, n))
  sim_t2i = np.zeros((b, n))
  loss_i2t = 0.0
  loss_t2i = 0.0
  correct = 0
  for i in range(b):
    # Step 4: momentum similarities; step 5: targets.
    sm_i2t = np.array([v_m[i] @ w_all[j] for j in range(n)]) / target_temp
    sm_t2i = np.array([w_m[i] @ v_all[j] for j in range(n)]) / target_temp
    onehot = np.zeros(n)
    onehot[i] = 1.0
    y_i2t = alpha * softmax_row(sm_i2t) + (1 - alpha) * onehot
    y_t2i = alpha * softmax_row(sm_t2i) + (1 - alpha) * onehot
    # Step 6: online similarities.
    sim_i2t[i] = np.array([v[i] @ w_all[j] for j in range(n)]) / temp
    sim_t2i[i] = np.array([w[i] @ v_all[j] for j in range(n)]) / temp
    # Step 7.
    loss_i2t -= np.sum(y_i2t * log_softmax_row(sim_i2t[i]))
    loss_t2i -= np.sum(y_t2i * log_softmax_row(sim_t2i[i]))
    correct += int(np.argmax(sim_i2t[i]) == i)
  loss = 0.5 * (loss_i2t / b + loss_t2i / b)
  return loss, sim_i2t, sim_t2i, correct / b


def itc_loss_in_batch(v, w, temp):
  """§3: in-batch ITC, arange labels, gradient through both sides."""
  v, w = _f64(v), _f64(w)
  b = v.shape[0]
  loss = 0.0
  for i in range(b):
    li2t = log_softmax_row(np.array([v[i] @ w[j] for j in range(b)]) / temp)
    lt2i = log_softmax_row(np.array([w[i] @ v[j] for j in range(b)]) / temp)
    loss -= 0.5 * (li2t[i] + lt2i[i]) / b
  return loss


def clamp_temp(temp):
  return min(max(float(temp), 0.001), 0.5)


def alpha_at(step, alpha, warmup_steps):
  if warmup_steps == 0:
    return alpha
  return alpha * min(1.0, step / warmup_steps)


def hard_negative_probs(sim_batch, image_ids):
  """§2.2 step 2: row b ∝ exp(s[b, j]) over j with another image id.

  Returns [B, B] probabilities; a row with no allowed j is all zero.
  """
  s = _f64(sim_batch)
  b = s.shape[0]
  probs = np.zeros((b, b))
  for i in range(b):
    allowed = [j for j in range(b)
               if j != i and image_ids[j] != image_ids[i]]
    if not allowed:
      continue
    e = np.exp(s[i, allowed] - np.max(s[i, allowed]))
    probs[i, allowed] = e / e.sum()
  return probs


def itm_loss(logits, labels):
  """§2.2 step 3: mean two-class cross-entropy and accuracy."""
  logits = _f64(logits)
  total = 0.0
  correct = 0
  for row, y in zip(logits, labels):
    total -= log_softmax_row(row)[int(y)]
    correct += int(np.argmax(row) == int(y))
  return total / len(labels), correct / len(labels)


def mlm_loss(logits, logits_m, labels, alpha):
  """§2.3 step 3. Returns (loss, acc, num_masked) over positions ≠ -100."""
  logits = _f64(logits)
  v = logits.shape[-1]
  flat = logits.reshape(-1, v)
  flat_m = None if logits_m is None else _f64(logits_m).reshape(-1, v)
  flat_labels = np.asarray(labels).reshape(-1)
  ce, distill, correct, n = 0.0, 0.0, 0, 0
  for k, y in enumerate(flat_labels):
    if y == -100:
      continue
    n += 1
    logp = log_softmax_row(flat[k])
    ce -= logp[y]
    if flat_m is not None:
      distill -= np.sum(softmax_row(flat_m[k]) * logp)
    correct += int(np.argmax(flat[k]) == y)
  if n == 0:
    return 0.0, 0.0, 0
  if flat_m is None:
    return ce / n, correct / n, n
  return (1 - alpha) * ce / n + alpha * distill / n, correct / n, n


def mlm_grad(logits, logits_m, labels, alpha):
  """Analytic d mlm_loss / d logits: at masked positions
  ((1−α)(p − onehot) + α(p − softmax(logits_m))) / n, 0 elsewhere."""
  logits = _f64(logits)
  grad = np.zeros_like(logits)
  mask = np.asarray(labels) != -100
  n = int(mask.sum())
  if n == 0:
    return grad
  for idx in zip(*np.nonzero(mask)):
    p = softmax_row(logits[idx])
    onehot = np.zeros_like(p)
    onehot[labels[idx]] = 1.0
    if logits_m is None:
      g = p - onehot
    else:
      q = softmax_row(_f64(logits_m)[idx])
      g = (1 - alpha) * (p - onehot) + alpha * (p - q)
    grad[idx] = g / n
  return grad


def numerical_grad(fn, x, eps=1e-6):
  """Central finite differences of scalar ``fn`` at float64 array ``x``."""
  x = _f64(x).copy()
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    orig = x[idx]
    x[idx] = orig + eps
    hi = fn(x)
    x[idx] = orig - eps
    lo = fn(x)
    x[idx] = orig
    grad[idx] = (hi - lo) / (2 * eps)
  return grad


# ---------------------------------------------------------------------------
# X-VLM box regression (§3.2) and MRC (§5).


def xyxy(box_cxcywh):
  """(cx, cy, w, h) → (x1, y1, x2, y2) of one box."""
  cx, cy, w, h = (float(v) for v in box_cxcywh)
  return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def iou_giou(a, b, eps=1e-7):
  """§3.2 of two (x1, y1, x2, y2) boxes, corners first made valid
  (x2 ≥ x1, y2 ≥ y1) and areas floored at ``eps`` in the divisions:
  GIoU = IoU − (|C| − |A∪B|)/|C|. Returns (iou, giou) as floats."""
  ax1, ay1, ax2, ay2 = (float(v) for v in a)
  bx1, by1, bx2, by2 = (float(v) for v in b)
  ax2, ay2 = max(ax2, ax1), max(ay2, ay1)
  bx2, by2 = max(bx2, bx1), max(by2, by1)
  area_a = (ax2 - ax1) * (ay2 - ay1)
  area_b = (bx2 - bx1) * (by2 - by1)
  iw = min(ax2, bx2) - max(ax1, bx1)
  ih = min(ay2, by2) - max(ay1, by1)
  inter = iw * ih if iw > 0 and ih > 0 else 0.0
  union = area_a + area_b - inter
  iou = inter / max(union, eps)
  c_area = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
  return iou, iou - (c_area - union) / max(c_area, eps)


def box_losses(pred_cxcywh, target_cxcywh, weights):
  """§3.2: (L_bbox, L_giou, mean IoU, N) over the rows with weight > 0;
  L1 summed over the 4 coordinates, every sum divided by max(Σw, 1)."""
  n = max(float(np.sum(weights)), 1.0)
  l1 = giou_loss = iou_sum = 0.0
  for p, t, w in zip(_f64(pred_cxcywh), _f64(target_cxcywh), _f64(weights)):
    if w == 0:
      continue
    l1 += w * float(np.sum(np.abs(p - t)))
    iou, giou = iou_giou(xyxy(p), xyxy(t))
    giou_loss += w * (1.0 - giou)
    iou_sum += w * iou
  return l1 / n, giou_loss / n, iou_sum / n, float(np.sum(weights))


def weighted_ce(logits, labels, weights):
  """§5: (Σ w·CE / max(Σw, 1), weighted accuracy, majority-class rate)."""
  logits = _f64(logits)
  n = max(float(np.sum(weights)), 1.0)
  ce = correct = 0.0
  per_class = {}
  for row, y, w in zip(logits, labels, _f64(weights)):
    if w == 0:
      continue
    ce -= w * log_softmax_row(row)[int(y)]
    correct += w * float(np.argmax(row) == int(y))
    per_class[int(y)] = per_class.get(int(y), 0.0) + w
  majority = max(per_class.values()) if per_class else 0.0
  return ce / n, correct / n, majority / n
